"""``make bench``: benchmark SPADE, PaDiM and PatchCore: where the time goes, peak memory, the targets.

Runs on a generated MVTec-layout class (``nut``; default 200 training and 50 test images at
256 px, cached under ``--data``) and writes ``<out>/bench.json`` plus a table with pass/fail
per target. Measured, each in a fresh process so that timings and peak memory are its own:

* the backbone alone (features of the training and test images, to layer 4: ms/img);
* per method, the real end-to-end path (``evaluate_class``: extract train, fit, stream the
  test set): fit s, inference ms/img excluding the backbone, peak RSS (``ru_maxrss``); for
  PatchCore (layers 2+3, coreset 0.1) also the greedy coreset selection's seconds, compared with
  the backbone time over the training images of the same run (forward to layer 3);
* the nearest-neighbour backends: what the probe measured and picked, and each
  backend's time on SPADE's layer-1 search and on PatchCore's (one image against the bank);
* the same at N=50 training images (growth with N) and with 500 test images (memory);
* SPADE's 15-subset layer sweep against one SPADE scoring with layers 1,2,3,4;
* the inspection path (``frame="whole"`` as ``spadim fit``, ``predict`` and ``serve``):
  ``fit_model``'s out-of-fold calibration seconds against features + final fit, SPADE and PaDiM
  (case ``calibration``); ``predict_paths`` over 200 and 2,000 distinct paths (symlinks cycling
  over the class's images), each size in a fresh process for its peak RSS, against the backbone
  alone over the same frames and batches (``stream``); ``spadim serve`` on 127.0.0.1 at an
  OS-picked port: median warm latency of one-image ``POST /predict`` against one batch-1 backbone
  forward in the same process, then concurrent clients, which must see no error (``serve``;
  reported as "serve: not available" when ``spadim.serve`` does not import).

Uses ``resnet50_caffe`` ImageNet weights when a checkpoint is found, else random weights
(timings and memory do not depend on the weight values); the output says which.

    python -m benchmarks [--n-train 200] [--n-test 50] [--arch resnet50_caffe] [--skip-large]
        [--only calibration,stream,serve] [--stream-sizes 200,2000] [--serve-requests 20]
"""
