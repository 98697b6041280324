"""LLaVA-NeXT-Video: a CLIP tower feeding a Llama LLM, "USER: ... ASSISTANT:" turns, BOS before every text."""

from __future__ import annotations

import transformers

from vidpress.tiny import llava
from vidpress.tiny.family import PATCH, Family, text_config

SPECIALS = ("<unk>", "<s>", "</s>", "<image>", "<video>")

# One line with explicit '\n': transformers renders templates with trim_blocks, which eats a newline after a tag.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def _config(tokenizer, text=None) -> transformers.LlavaNextVideoConfig:
    return transformers.LlavaNextVideoConfig(
        vision_config=dict(model_type="clip_vision_model", projection_dim=64, **llava.vision_config()),
        text_config=dict(model_type="llama", **text_config(tokenizer, text)),
        vision_feature_select_strategy="default",  # drops CLIP's CLS token
        vision_feature_layer=-2,
        image_grid_pinpoints=llava.pinpoints(),
        spatial_pool_stride=2,
        image_seq_length=llava.GRID * llava.GRID,
        video_seq_length=(llava.GRID // 2) ** 2 * 8,  # informational: tokens of an 8-frame clip
        **llava.token_ids(tokenizer),
    )


def _processor(tokenizer) -> transformers.LlavaNextVideoProcessor:
    square = {"height": llava.VISION_SIZE, "width": llava.VISION_SIZE}
    return transformers.LlavaNextVideoProcessor(
        video_processor=transformers.LlavaNextVideoVideoProcessor(
            size={"shortest_edge": llava.VISION_SIZE}, crop_size=square
        ),
        image_processor=transformers.LlavaNextImageProcessor(
            size={"shortest_edge": llava.VISION_SIZE}, crop_size=square, image_grid_pinpoints=llava.pinpoints()
        ),
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token
        chat_template=CHAT_TEMPLATE,
    )


FAMILY = Family(
    model_class="LlavaNextVideoForConditionalGeneration",
    specials=SPECIALS,
    token_names=dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"),
    chat_template=CHAT_TEMPLATE,
    token_ids=llava.token_ids,
    config=_config,
    processor=_processor,
    prepend_bos=True,  # Llama tokenizers prepend BOS to every encoded text; the chat template does not write it
)
