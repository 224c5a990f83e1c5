"""Running exported detectors: ONNX Runtime and OpenVINO backends called like the PyTorch models."""
