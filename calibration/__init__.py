"""Built-in calibration and held-out text sets, installed as the `quantkit_calibration` package.

See README.md in this folder for where the text comes from; `build.py` regenerates it.
"""
