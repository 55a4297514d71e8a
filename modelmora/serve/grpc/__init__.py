"""The Open Inference Protocol over gRPC (`serve --grpc-port`): the KServe v2 / Triton service
on the HTTP app's state, so that both protocols share the supervisor, scheduler, keys and metrics.

    messages.py   proto messages <-> tensors and parameters (pure)
    service.py    the servicer: keys, errors as status codes, unary and streamed inference
    server.py     grpc.aio's server, started and drained by the app's lifespan
"""
