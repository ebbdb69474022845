"""Crops: where they are read from (zip or folder, hostile names refused), how they are decoded, their FlowCam features."""
