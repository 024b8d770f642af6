"""File names of the artifacts RouterForge writes and reads (one spelling each)."""

WEIGHTS_FILE = "model.safetensors"  # a router's (or a step checkpoint's) weights
CONFIG_FILE = "config.json"  # what rebuilds the nn.Module
MANIFEST_FILE = "manifest.json"  # provenance + sha256 of every other file of an export / dataset version
COMPLETE_MARKER = "COMPLETE"  # written last into a step checkpoint or dataset version directory
LATEST_FILE = "LATEST"  # text file naming the newest version of a dataset or router
