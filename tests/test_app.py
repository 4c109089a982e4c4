"""The app's service layer (the UI itself is tested in the browser tests)."""

from app.service import describe_method


def test_describe_method_counts():
    text, info = describe_method("sam-vit-b", "parser")
    assert info["adapter"] == 38_144 and "38,144" in text


def test_describe_method_refuses_wrong_family():
    text, info = describe_method("clip-vit-b-16", "cobot-lora")
    assert info == {} and "cannot be used" in text


def test_ui_builds():
    from app.ui import build

    demo = build()
    assert demo is not None
