"""Gunicorn configuration for dhserve, all-in-one layout:

    gunicorn -c gunicorn.conf.py 'dhserve.api:create_app()'

One gthread worker serves the API and renders in a background thread started after the fork.
CUDA: the master never touches it (preload_app = False; when_ready refuses to start if CUDA was
initialised in the master), and post_fork pins the worker to its GPU (CUDA_VISIBLE_DEVICES)
before anything can initialise CUDA. Every value comes from dhserve.serving, read from
GUNICORN_WORKERS, GUNICORN_THREADS, GUNICORN_TIMEOUT, GUNICORN_GRACEFUL_TIMEOUT, GUNICORN_BIND,
GUNICORN_WORKER_CLASS, GUNICORN_MAX_MEMORY (MB), GUNICORN_MAX_REQUESTS, GUNICORN_KEEPALIVE,
DHSERVE_PROFILE, DHSERVE_LAYOUT, DHSERVE_GPUS; `dhserve serve --diagnose` shows what they
resolve to. GUNICORN_CMD_ARGS and the command line win over this file, as always with Gunicorn.
"""

import sys
from pathlib import Path

try:
    import dhserve  # noqa: F401
except ModuleNotFoundError:          # a checkout whose package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from dhserve.serving.web import config_file_settings

_dhserve = config_file_settings(default_layout="all-in-one")

bind = _dhserve["bind"]                          # 127.0.0.1:8383 unless GUNICORN_BIND
workers = _dhserve["workers"]                    # all-in-one: 1 (one model copy per GPU)
threads = _dhserve["threads"]                    # from the GPU profile unless GUNICORN_THREADS
worker_class = _dhserve["worker_class"]          # gthread: heartbeats while renders run
timeout = _dhserve["timeout"]                    # 600
graceful_timeout = _dhserve["graceful_timeout"]
keepalive = _dhserve["keepalive"]                # 75 s: HeyGem's client polls every 2 s on
                                                 # a kept-alive connection (Gunicorn's own: 2)
limit_request_line = _dhserve["limit_request_line"]  # 0: a long /easy query gets an envelope
max_requests = _dhserve["max_requests"]
max_requests_jitter = _dhserve["max_requests_jitter"]
preload_app = False                              # no app, model or CUDA in the master
worker_tmp_dir = _dhserve.get("worker_tmp_dir")  # /dev/shm where it exists
proc_name = _dhserve["proc_name"]
accesslog = _dhserve["accesslog"]                # dhserve logs each request itself
logconfig_dict = _dhserve["logconfig_dict"]      # stderr + <data dir>/log/dh.log, pid, job
control_socket_disable = _dhserve["control_socket_disable"]  # no shared ~/.gunicorn socket

# hooks: CUDA guard in the master, GPU pinning and the renderer in the worker, memory watchdog,
# the metrics folder (made in RAM in when_ready, once the port is bound, before the first fork)
on_starting = _dhserve["on_starting"]
when_ready = _dhserve["when_ready"]
post_fork = _dhserve["post_fork"]
post_worker_init = _dhserve["post_worker_init"]
post_request = _dhserve["post_request"]
worker_int = _dhserve["worker_int"]
worker_abort = _dhserve["worker_abort"]
worker_exit = _dhserve["worker_exit"]
child_exit = _dhserve["child_exit"]              # a gone worker's gauges leave /metrics
on_exit = _dhserve["on_exit"]                    # the metrics folder (in /dev/shm) goes
