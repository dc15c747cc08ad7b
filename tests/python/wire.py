"""A connection that speaks the Kafka protocol by hand to one broker."""

import io
import socket
import struct


class Wire:
    """One connection to one broker speaking the protocol by hand, with
    kafka-python 3's request and response classes: for the answers clients
    act on without showing (member id required, stale generations, ...),
    and for requests that must reach one broker in particular."""

    def __init__(self, port):
        from kafka.protocol.metadata.api_versions import ApiVersionsRequest

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.correlation = 0
        self.versions = {}
        response = self.call(ApiVersionsRequest(), version=0)
        assert response.error_code == 0
        self.versions = {k.api_key: k.max_version for k in response.api_keys}

    def send(self, request, version=None):
        if version is None:
            assert request.API_KEY in self.versions, f"the server does not offer api {request.API_KEY}"
            version = min(request.max_version, self.versions[request.API_KEY])
        self.correlation += 1
        request.API_VERSION = version
        request.with_header(correlation_id=self.correlation, client_id="wire")
        self.sock.sendall(request.encode(version=version, header=True, framed=True))
        return request

    def receive(self, request):
        (size,) = struct.unpack(">i", self._read(4))
        buf = io.BytesIO(self._read(size))
        response_class = request.header.get_response_class()
        header = response_class.parse_header(buf)
        assert header.correlation_id == request.header.correlation_id
        return response_class.decode(buf)

    def call(self, request, version=None):
        return self.receive(self.send(request, version))

    def _read(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "connection closed"
            data += chunk
        return data

    def close(self):
        self.sock.close()
