"""The ZeroMQ bus: protocol, proxy, and publisher/subscriber helpers."""
