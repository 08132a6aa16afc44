"""``python -m bus``: run the stack's XSUB/XPUB proxy."""

from bus.proxy import serve
from core import logs, settings

if __name__ == "__main__":
    logs.setup("bus")
    cfg = settings.load()
    cfg.ensure_dirs()
    serve(cfg.bus_pub, cfg.bus_sub, cfg.metrics, cfg.metrics_host, cfg.bus_metrics_port)
