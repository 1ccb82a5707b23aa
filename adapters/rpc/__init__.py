"""The ``rpc`` system type: runners reached over HTTP (``POST {base_url}/{path}``)."""
