"""Data preparation from the public releases, datalists and the loaders the bundles use."""

from custom.data.datalist import DatasetError
from custom.data.loaders import inference_inputs, load_split, stream_loader

__all__ = ["DatasetError", "inference_inputs", "load_split", "stream_loader"]
