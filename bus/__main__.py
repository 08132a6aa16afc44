"""``python -m bus``: run the stack's XSUB/XPUB proxy."""

from bus.proxy import serve
from core import logs, settings
from core.harden import harden_trusted

if __name__ == "__main__":
    logs.setup("bus")
    cfg = settings.load()
    harden_trusted()
    cfg.ensure_dirs()
    from bus.auth import load_master

    serve(
        cfg.bus_pub,
        cfg.bus_sub,
        cfg.metrics,
        cfg.metrics_host,
        cfg.bus_metrics_port,
        master=load_master(cfg.home),
    )
