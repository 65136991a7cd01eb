"""gRPC (contract §4): grpcio's server on an asyncio loop in its own thread, its calls' work in
trio, adapting to the api/ functions.

``server.serve_grpc`` is the one entry point; the generated messages live in ``_proto/``.
"""
