"""What operators see and do: one gatherer of facts and one judge of health (health.py), the status
report (status.py), /healthz and /metrics (http.py, metrics.py), the live view (top.py over
topdata.py), the end-to-end test (selftest.py), `replay --wait` (replay.py), and every human table
(human.py)."""
