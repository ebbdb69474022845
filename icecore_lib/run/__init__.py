"""Run directories and their artefacts, the notebook set-up, the pipeline, the report, Colab staging."""
