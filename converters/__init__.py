"""Converters (``edge_sdk.converters``): PyTorch / Hugging Face models -> ONNX edge packages.

Converters may import torch, transformers and the ONNX tool chain; they write packages that the
torch-free ``edge_sdk.runtimes`` read.
"""
