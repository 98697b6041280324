"""LLaVA-OneVision: a SigLIP tower feeding a Qwen2 LLM, with ChatML-style "<|im_start|>role " turns."""

from __future__ import annotations

import transformers

from vidpress.tiny import llava
from vidpress.tiny.family import Family, text_config

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")

# One line with explicit '\n': transformers renders templates with trim_blocks, which eats a newline after a tag.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% if message['content'] is string %}{{ '\\n' + message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\\n' + content['text'] }}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _config(tokenizer, text=None) -> transformers.LlavaOnevisionConfig:
    return transformers.LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", vision_use_head=False, **llava.vision_config()),
        text_config=dict(model_type="qwen2", **text_config(tokenizer, text)),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=llava.pinpoints(),
        **llava.token_ids(tokenizer),
    )


def _processor(tokenizer) -> transformers.LlavaOnevisionProcessor:
    square = {"height": llava.VISION_SIZE, "width": llava.VISION_SIZE}
    return transformers.LlavaOnevisionProcessor(
        image_processor=transformers.LlavaOnevisionImageProcessor(size=square, image_grid_pinpoints=llava.pinpoints()),
        tokenizer=tokenizer,
        video_processor=transformers.LlavaOnevisionVideoProcessor(size=square),
        num_image_tokens=llava.GRID**2,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )


FAMILY = Family(
    model_class="LlavaOnevisionForConditionalGeneration",
    specials=SPECIALS,
    token_names=dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"),
    chat_template=CHAT_TEMPLATE,
    token_ids=llava.token_ids,
    config=_config,
    processor=_processor,
)
