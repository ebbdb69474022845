"""icecore: classify FlowCam images of ice-core particles and find the ones nobody has labelled."""

__version__ = "0.1.0"
