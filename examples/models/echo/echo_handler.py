"""Echo: answers each request with its own input (the `data` field, else the body)."""


def handle(data, context):
    if data is None:  # the load-time call
        return None
    out = []
    for row in data:
        value = row.get("data", row.get("body"))
        out.append(bytes(value) if isinstance(value, bytearray) else value)
    return out
