import pytest
import torch.nn as nn

import zoo
from zoo.core.registry import UnknownModelError, register_model


def test_create_model_passes_keyword_overrides_to_the_builder():
    model = zoo.create_model("convnet", num_classes=7, in_channels=3, width=8)
    assert model.classifier[-1].out_features == 7
    assert model.features[0].in_channels == 3
    assert model.features[0].out_channels == 8


def test_list_models_filters_with_wildcards_and_family():
    assert "lenet5" in zoo.list_models("lenet*")
    assert all(n.startswith("lenet") for n in zoo.list_models("lenet*"))
    assert "convnet" in zoo.list_models(family="classification")
    assert zoo.list_models(family="no-such-family") == []


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownModelError, match=r"Unknown classification model 'lenet'.*lenet5"):
        zoo.create_model("lenet", family="classification")


def test_unknown_keyword_names_the_accepted_arguments():
    with pytest.raises(TypeError, match=r"does not take 'widht'.*width"):
        zoo.create_model("convnet", widht=8)


def test_registering_a_taken_name_twice_is_refused():
    @register_model("test-family", name="_tmp_unique_model")
    def first() -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="registered twice"):

        @register_model("test-family", name="_tmp_unique_model")
        def second() -> nn.Module:
            return nn.Identity()

    assert isinstance(zoo.create_model("_tmp_unique_model"), nn.Identity)


def test_model_of_another_family_is_named_as_such():
    @register_model("other-family", name="_tmp_other_model")
    def builder() -> nn.Module:
        return nn.Identity()

    with pytest.raises(UnknownModelError, match="is a other-family model"):
        zoo.create_model("_tmp_other_model", family="classification")
