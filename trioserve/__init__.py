"""trioserve: a PyTorch model server that speaks TorchServe's contract, built on Trio."""

__version__ = "0.1.0"
