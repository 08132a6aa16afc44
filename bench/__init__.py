"""metastream's benchmark suite: ``python -m bench`` (see bench/__main__.py and the README).

Every number is a ratio against a baseline measured side by side in the same run, because the
machines this runs on are shared and noisy: absolute times mean little, same-run ratios do.
"""
