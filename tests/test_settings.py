"""Settings are validated at start-up, and every message names the variable at fault."""

import os
import subprocess
import sys

import pytest

from app.core.settings import SettingsError, load_settings
from tests.helpers import ROOT

URL = "postgresql+asyncpg://u@h/db"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("DB_", "DATABASE_", "INSTANCE_", "AUTH_", "OIDC_", "LOG_", "ROOT_", "CLOUD_SQL")):
            monkeypatch.delenv(name)


def _error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    return str(raised.value)


def test_defaults_follow_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", URL)
    settings = load_settings()
    assert (settings.db_name, settings.db_ip_type, settings.auth_mode) == ("app", "public", "none")
    assert (settings.db_pool_size, settings.db_max_overflow, settings.db_pool_timeout_s) == (5, 2, 10)
    assert (settings.db_statement_timeout_ms, settings.log_level) == (5000, "INFO")
    assert settings.root_path == ""


def test_logs_are_json_on_google_cloud_and_text_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", URL)
    monkeypatch.delenv("K_SERVICE", raising=False)
    assert load_settings().log_format == "text"
    monkeypatch.setenv("K_SERVICE", "projects-api")  # set by Cloud Run, which serves Cloud Functions
    assert load_settings().log_format == "json"
    monkeypatch.setenv("LOG_FORMAT", "text")
    assert load_settings().log_format == "text"


def test_both_database_url_and_instance_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(monkeypatch, DATABASE_URL=URL, INSTANCE_CONNECTION_NAME="p:r:i", DB_IAM_USER="sa@p.iam")
    assert "DATABASE_URL" in message and "INSTANCE_CONNECTION_NAME" in message


def test_no_database_at_all_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "DATABASE_URL or INSTANCE_CONNECTION_NAME" in _error(monkeypatch)


def test_a_pool_needs_room_for_one_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(monkeypatch, DATABASE_URL=URL, DB_POOL_SIZE="0", DB_MAX_OVERFLOW="0")
    assert "DB_POOL_SIZE + DB_MAX_OVERFLOW" in message


def test_instance_needs_an_iam_user(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "DB_IAM_USER" in _error(monkeypatch, INSTANCE_CONNECTION_NAME="p:r:i")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", "mysql://u@h/db"),
        ("DATABASE_URL", "postgresql+asyncpg://u@h:notaport/db"),
        ("DATABASE_URL", "postgresql+asyncpg://u@h:70000/db"),
        ("DB_NAME", ""),
        ("DB_STATEMENT_TIMEOUT_MS", "3000000000"),
        ("OIDC_JWKS_URL", "file:///etc/passwd"),
        ("OIDC_JWKS_URL", "http://keys.example.com/certs"),
        ("OIDC_JWKS_URL", "http://localhost:x@keys.example.com/certs"),
        ("INSTANCE_CONNECTION_NAME", "just-a-name"),
        ("DB_IP_TYPE", "carrier-pigeon"),
        ("DB_POOL_SIZE", "-1"),
        ("DB_POOL_SIZE", "five"),
        ("DB_POOL_IDLE_S", "-1"),
        ("DB_MAX_OVERFLOW", "-1"),
        ("DB_POOL_TIMEOUT_S", "0"),
        ("DB_STATEMENT_TIMEOUT_MS", "-5"),
        ("DB_TRANSACTION_POOLING", "maybe"),
        ("AUTH_MODE", "basic"),
        ("LOG_LEVEL", "LOUD"),
        ("LOG_FORMAT", "xml"),
        ("ROOT_PATH", "no-leading-slash"),
    ],
)
def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    env = {"DATABASE_URL": URL, variable: value}
    if variable == "INSTANCE_CONNECTION_NAME":
        env = {variable: value, "DB_IAM_USER": "sa@p.iam"}
    assert variable in _error(monkeypatch, **env)


def test_auth_modes_need_their_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "AUTH_AUDIENCE" in _error(monkeypatch, DATABASE_URL=URL, AUTH_MODE="google")
    message = _error(monkeypatch, DATABASE_URL=URL, AUTH_MODE="oidc", AUTH_AUDIENCE="aud")
    assert "OIDC_ISSUER" in message and "OIDC_JWKS_URL" in message


def test_transaction_pooling_needs_a_url_and_the_statement_timeout_on_the_role(monkeypatch: pytest.MonkeyPatch) -> None:
    connector = {"INSTANCE_CONNECTION_NAME": "p:r:i", "DB_IAM_USER": "sa@p.iam", "DB_TRANSACTION_POOLING": "true"}
    assert "DB_TRANSACTION_POOLING: needs DATABASE_URL" in _error(monkeypatch, **connector)
    monkeypatch.delenv("INSTANCE_CONNECTION_NAME")
    timeout = {"DATABASE_URL": URL, "DB_STATEMENT_TIMEOUT_MS": "5000"}
    assert "ALTER ROLE ... SET statement_timeout" in _error(monkeypatch, **timeout)
    monkeypatch.delenv("DB_STATEMENT_TIMEOUT_MS")
    assert load_settings().db_transaction_pooling is True


def test_log_level_is_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", URL)
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert load_settings().log_level == "DEBUG"


def test_the_function_refuses_to_start_with_a_bad_setting() -> None:
    env = {key: value for key, value in os.environ.items() if key != "INSTANCE_CONNECTION_NAME"}
    env |= {"DATABASE_URL": URL, "DB_POOL_SIZE": "lots"}
    result = subprocess.run([sys.executable, "-c", "import main"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "DB_POOL_SIZE" in result.stderr
