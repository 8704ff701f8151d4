"""DyCON for MONAI: losses, networks, the mean-teacher workflow and data preparation used by the bundles."""

__version__ = "0.1.0"
