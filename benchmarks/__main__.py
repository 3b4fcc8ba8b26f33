"""``python -m benchmarks`` (``make bench``): every case of :mod:`benchmarks.run`; ``-h`` lists the options."""

from .run import main

main()
