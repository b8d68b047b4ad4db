"""Configuration: the dataclasses a recipe or the command line fills, the recipe parser, and the checks on values,
YAML and paths made before any work.

* ``arguments``: the three classes parsed together (``ModelArguments``, ``DataArguments``,
  ``FinetuneTrainingArguments``), the last composed of ``base`` (transformers' keys with fine-tuning defaults)
  and one dataclass per feature group: ``head`` (head and freezing), ``lora``, ``regularization``, ``balance``
  (class balance), ``speed`` and ``resume`` (the output folder); ``model``, ``label_mapping`` and ``data`` hold
  the other two classes' keys;
* ``checks``: the checks across feature groups; ``ranges``: every numeric key's range; ``path_checks``,
  ``safe_yaml``: paths and YAML;
* ``parser``: recipe YAML + flags -> the three classes; ``reference``: the recipe-keys page generated from them.
"""
