"""The ceiling of the transport alone: `grpc.aio` streaming 1.5 MB responses (1,000 rows of 384
float32, as bench_grpc.py's chunks) from a servicer that does nothing, to a client in the same
process, with the project's own generated stubs. `python benchmarks/grpc_ceiling.py`."""

import asyncio
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
import grpc

from modelmora.oip import grpc_predict_v2_pb2 as pb
from modelmora.oip import grpc_predict_v2_pb2_grpc as pbg

PAYLOAD = b"\0" * (1000 * 384 * 4)


class S(pbg.GRPCInferenceServiceServicer):
    async def ModelStreamInfer(self, request_iterator, context):
        async for _request in request_iterator:
            for _ in range(2):
                r = pb.ModelInferResponse(model_name="x")
                r.raw_output_contents.append(PAYLOAD)
                yield pb.ModelStreamInferResponse(infer_response=r)


async def main():
    server = grpc.aio.server(
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    )
    pbg.add_GRPCInferenceServiceServicer_to_server(S(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", -1)]
    ) as ch:
        stub = pbg.GRPCInferenceServiceStub(ch)

        async def reqs():
            for _ in range(40):
                yield pb.ModelInferRequest(model_name="x")

        t = time.perf_counter()
        n = 0
        async for resp in stub.ModelStreamInfer(reqs()):
            n += len(resp.infer_response.raw_output_contents[0])
        dt = time.perf_counter() - t
        print(f"grpc.aio ceiling: {n / 1e6 / dt:.0f} MB/s ({n / 1e6:.0f} MB in {dt:.2f}s)")
    await server.stop(0)


asyncio.run(main())
