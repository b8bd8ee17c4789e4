"""Input quality: the input schema checked on every record, the training data's reference profile, and drift of
recent inputs from it (PSI on the profile's bins, the two-sample KS test on its sample)."""

from forwardpass.quality.drift import FeatureDrift, InputWindow, drift_report
from forwardpass.quality.profile import FeatureProfile, Profile, build_profile
from forwardpass.quality.schema import SchemaCheck

__all__ = [
    "FeatureDrift",
    "FeatureProfile",
    "InputWindow",
    "Profile",
    "SchemaCheck",
    "build_profile",
    "drift_report",
]
