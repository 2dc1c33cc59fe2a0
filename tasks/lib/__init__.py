"""The library the stages share: artifacts, config, validation (GX), tracking (MLflow), sources, drift."""
