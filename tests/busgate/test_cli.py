import subprocess
import sys

BUSGATE = [sys.executable, "-m", "busgate"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BUSGATE, *args], capture_output=True, text=True, timeout=30)


def config_check(tmp_path, toml: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "busgate.toml"
    path.write_text(toml)
    return run("config", "check", str(path))


def test_config_check_accepts_a_valid_file(tmp_path):
    result = config_check(
        tmp_path, '[systems.a]\ntype = "rpc"\nbase_url = "http://x"\n[channels.a]\nsystem = "a"\n'
    )
    assert result.returncode == 0
    assert "1 system(s), 1 channel(s)" in result.stdout


def test_config_check_names_the_key_path_and_fails(tmp_path):
    result = config_check(
        tmp_path, '[systems.a]\ntype = "rpc"\nbase_url = "http://x"\ntimeout = "soon"\n'
    )
    assert result.returncode == 2
    assert "systems.a.timeout: Expected `float | null`, got `str`" in result.stderr
    assert "Traceback" not in result.stderr


def test_adapter_refuses_an_unknown_system(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[systems.a]\ntype = "rpc"\nbase_url = "http://x"\n')
    result = run("adapter", "--config", str(path), "--system", "nope")
    assert result.returncode == 2
    assert "unknown system(s) ['nope']" in result.stderr


def test_config_check_refuses_a_bad_bus_url(tmp_path):
    result = config_check(tmp_path, '[gateway]\nbus = "kafka://k1:9092?partitons=12"\n')
    assert result.returncode == 2
    assert "gateway.bus: bus URL" in result.stderr
    assert "unknown option 'partitons'" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_check_warns_when_max_body_exceeds_what_the_bus_carries(tmp_path):
    system = '[systems.a]\ntype = "rpc"\nbase_url = "http://x"\n'
    result = config_check(tmp_path, system)  # NATS' 1 MiB against the default 10 MiB
    assert result.returncode == 0
    assert "warning: gateway.max_body (10485760 bytes) exceeds what the bus carries" in (
        result.stderr
    )
    assert "over 1031168 bytes will be refused (413)" in result.stderr
    for gateway in (
        "max_body = 1000000",
        'bus = "nats://n:4222?max_payload=16777216"',
        'bus = "kafka://k:9092?max_request_size=16777216"',
    ):
        result = config_check(tmp_path, f"[gateway]\n{gateway}\n{system}")
        assert result.returncode == 0, result.stderr
        assert "warning" not in result.stderr
    result = config_check(tmp_path, f'[gateway]\nbus = "kafka://k:9092"\n{system}')
    assert "exceeds what the bus carries" in result.stderr
