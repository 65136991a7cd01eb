"""Generated gRPC code: see trioserve/_protogen.py. Do not edit."""
