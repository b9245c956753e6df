"""The tools that measure ncalab, apart from the library they measure: ``python -m ncalab.tools.bench`` (one
training step against a plain baseline) and ``python -m ncalab.tools.gpu_check`` (``make gpu-check``)."""
