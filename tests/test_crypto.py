from cryptography.fernet import Fernet

from governance import crypto


def test_round_trip_and_rotation(settings):
    old = Fernet.generate_key().decode()
    settings.ENCRYPTION_KEYS = [old]
    token = crypto.encrypt("https://hooks.slack.com/services/T000/B000/XXXX")
    assert "hooks.slack.com" not in token
    settings.ENCRYPTION_KEYS = [Fernet.generate_key().decode(), old]
    assert crypto.decrypt(token) == "https://hooks.slack.com/services/T000/B000/XXXX"


def test_mask_hides_all_but_the_end():
    assert crypto.mask("sk-ant-admin01-abcdefgh") == "…efgh"
