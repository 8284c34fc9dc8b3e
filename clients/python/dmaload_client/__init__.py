"""A client of `dmaload serve`, in the Python standard library only (3.9+: socket.send_fds, socket.recv_fds).

The server loads a file once into a sealed memfd (or dma-bufs) and hands every client fds of that one buffer; this
client maps them read-only, zero-copy, and checks who runs the server (SO_PEERCRED) before sending it anything.
The wire protocol is docs/protocol.md in the dmaload repository; clients/python/README.md is the user guide.

    from dmaload_client import load_file, safe_open   # safetensors' API; DMALOAD_SOCKET names the server

    state = load_file("model.safetensors")          # {name: torch.Tensor}, zero-copy views of the served copy
    with safe_open("model-folder/", framework="pt") as f:   # a file, an index, a folder or hf://ORG/NAME/FILE
        part = f.get_slice("lm_head.weight")[:, :128]

    from dmaload_client import Client

    with Client("/run/dmaload.sock") as client:
        with client.load("model.safetensors") as buf:
            view = buf.view()          # a read-only memoryview of the whole file
            header_len = int.from_bytes(view[:8], "little")
        weights = client.load_safetensors("model.safetensors", framework="torch")  # zero-copy, read-only
        meta = client.safetensors_metadata("model.safetensors")  # the header's __metadata__, read here
        shard = client.load_safetensors("model.safetensors", framework="torch",   # one rank's share, as the
                                        rank=1, world_size=4, split="rows")      # server plans it

Command line: python3 -m dmaload_client SOCKET FILE... [--sha256]   (one JSON line per file; installed: dmaload-client)
              python3 -m dmaload_client SOCKET --status
"""
from ._safe_open import load_file, safe_open
from .client import Buffer, Client
from .errors import DmaloadError

__version__ = "0.4.0"
__all__ = ["Buffer", "Client", "DmaloadError", "load_file", "safe_open", "__version__"]
