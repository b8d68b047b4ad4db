"""Exporting a finished model: the ONNX graph with its preprocessing, labels and thresholds beside it
(``hf-finetune export``), an optional int8 dynamic-quantised graph, and running an export with onnxruntime,
numpy and PIL alone (``hf-finetune predict --onnx``)."""
