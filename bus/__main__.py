"""``python -m bus``: run the stack's XSUB/XPUB proxy."""

import logging

from bus.proxy import serve
from core import settings
from core.harden import harden_trusted

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = settings.load()
    harden_trusted()
    cfg.ensure_dirs()
    from bus.auth import load_master

    serve(cfg.bus_pub, cfg.bus_sub, load_master(cfg.home))
