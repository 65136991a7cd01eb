"""gRPC (contract §4): grpclib services on a trio-asyncio loop, adapting to the api/ functions.

``server.serve_grpc`` is the one entry point; the generated code lives in ``_proto/``.
"""
