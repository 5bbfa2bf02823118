"""Deployment: export to ONNX (:mod:`.onnx_export`) and run with ONNX Runtime
(:mod:`.onnx_runtime`); both share the graph's contract (:mod:`.onnx_contract`).

Nothing here is imported by ``import focus_detr``: ``onnx`` and ``onnxruntime`` are optional
(``pip install "focus-detr[onnx]"``) and load only when an export or a ``.onnx`` model needs
them.
"""
