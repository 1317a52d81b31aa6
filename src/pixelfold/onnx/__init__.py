"""ONNX graphs in, ONNX graphs out (issue 11): exact layout rewrites applied to ``.onnx`` files.

Library choice: plain ``onnx`` protobufs + ``onnx.numpy_helper`` (no onnx-graphsurgeon / onnxscript):
the rewrites only replace single nodes and their initializers, so the protobuf API is enough, it is
already a dependency of the exporter, and it keeps every opset (13-28) readable. Weight arithmetic is
never done here: it goes through :mod:`pixelfold.transforms`. Everything here is imported lazily by
callers; ``import pixelfold`` does not import onnx.
"""

from pixelfold.onnx.api import rewrite_onnx, rewrite_onnx_file
from pixelfold.onnx.solve import rewrite_onnx_file_for_target, rewrite_onnx_for_target

__all__ = ["rewrite_onnx", "rewrite_onnx_file", "rewrite_onnx_for_target", "rewrite_onnx_file_for_target"]
