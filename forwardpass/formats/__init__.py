"""Source formats: recognise an artefact, run it natively, convert it to ONNX (registry written by the formats lead)."""
