"""The ``crud`` system type: ``/api/request/CHANNEL/STATE/ID`` → ``{base_url}/STATE/ID``."""
