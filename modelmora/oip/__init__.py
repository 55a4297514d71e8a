"""The Open Inference Protocol (KServe v2, spoken by Triton and Seldon MLServer), shared by the
server and `modelmora.client`: tensors and what each task takes and gives (`tensors.py`), the
protocol's JSON bodies, and the gRPC service's messages generated from `grpc_predict_v2.proto`.
Imports nothing of the server, so the client installs without it."""
