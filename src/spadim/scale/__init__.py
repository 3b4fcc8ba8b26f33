"""Beyond one machine, on Ray (``pip install 'spadim[ray]'``): predict over Ray Data (:mod:`.ray_jobs`),
one Ray task per class for evaluate and fit, and Ray Serve replicas with dynamic batching behind
``spadim serve --ray`` (:mod:`.ray_serve`). Nothing here is imported unless a ``--ray`` flag asks."""
