"""Deployment beyond spadim's own process: each fitted method as one graph (:mod:`.graph`), its ONNX
export and the onnxruntime scorer (:mod:`.onnx`)."""
