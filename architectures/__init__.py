"""Model functions: the built-ins (builtin.py) and yours. ``train.model: architectures.<module>:<function>`` names one;
this folder is a dependency of train in dvc.yaml, and it travels with every logged model (docs/own-model.md)."""
