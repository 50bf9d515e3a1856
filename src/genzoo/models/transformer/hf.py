"""``hf``: any Hugging Face causal or encoder-decoder language model behind the genzoo API (``hf:NAME_OR_PATH``).

``genzoo.load_pretrained("gpt2")`` (a hub id or a local folder) wraps ``AutoModelForCausalLM`` and its tokenizer:
``generate``/``stream`` with the shared sampling controls, ``chat(messages)`` through the model's chat template
(the ``chat`` capability, when its tokenizer has one),
``log_likelihood`` for perplexity, and training (full or LoRA through ``peft``) on a genzoo text spec,
whose tokenizer then is the model's own (``text:FILE#tokenizer=hf:NAME``). Without ``pretrained`` the model is a
fresh HF architecture (``gpt2`` or ``llama``) sized by hyperparameters and trained on the data's own tokenizer.

A pretrained model reads a prompt exactly as Hugging Face ``generate`` does: the tokenizer's own special tokens, no
start token added (only the empty prompt gets one, ``bos_token_id`` or else EOS, since a first token needs a
context). Generation stops at any end-of-sequence id of the tokenizer or of ``generation_config`` (chat models often
list several).

The ``transformers`` tokenizer is ``model.hf_tokenizer`` (chat templates, special tokens); ``model.tokenizer`` is the
genzoo :class:`~genzoo.tokenizer.Tokenizer` over the same vocabulary, like every text model's.

A model whose config is encoder-decoder (T5, BART ...) loads with ``AutoModelForSeq2SeqLM`` and follows the
encoder-decoder conventions of :mod:`genzoo.models.transformer.encoder_decoder`: ``generate(prompt)`` encodes the
prompt and decodes the answer (greedy, sampling or beam search through the same loop), it trains (fully or with
LoRA) on ``pairs:``/``task:`` data read with its own tokenizer, and ``genzoo eval`` reports its exact match and
character error rate. Its encoder input is the source followed by ``</s>``, as the T5 tokenizer writes it.

``transformers`` and ``peft`` are the optional extra ``llm``: ``pip install genzoo[llm]``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from genzoo.contract import Capability, DataInfo, DataKind, ModelConfig
from genzoo.errors import ConfigError, GenzooError
from genzoo.models.autoregressive.sequence import TokenSequenceModel
from genzoo.models.transformer.encoder_decoder import EncoderDecoderLM, split_prompt
from genzoo.nn.lora import apply_lora
from genzoo.registry import register
from genzoo.tokenizer import Tokenizer, require_transformers
from genzoo.tokenizer import hf_tokenizer as load_hf_tokenizer

#: sequence length of ``sample()`` for a pretrained model (its context can be far longer)
PRETRAINED_SAMPLE_LEN = 128


@register
class HFCausalLM(EncoderDecoderLM):
    """A Hugging Face causal (or pretrained encoder-decoder) language model, from the hub or a folder, or a fresh
    causal architecture."""

    name = "hf"
    family = "transformer"
    data_kinds = frozenset({DataKind.TOKENS})
    base_capabilities = frozenset({Capability.SAMPLE, Capability.EXACT_LIKELIHOOD, Capability.GENERATE_TEXT,
                                   Capability.CHAT})
    #: ``hf:NAME`` as a model name sets this hyperparameter
    name_argument: ClassVar[str] = "pretrained"
    smoke_config: ClassVar[dict[str, Any]] = {"layers": 1, "heads": 2, "width": 16}

    class Config(ModelConfig):
        pretrained: str = ""  # hub id or local folder; "" = a fresh ``architecture`` sized below
        architecture: Literal["gpt2", "llama"] = "gpt2"
        layers: int = Field(2, ge=1)
        heads: int = Field(4, ge=1)
        width: int = Field(128, ge=2)
        lora_rank: int = Field(0, ge=0)  # > 0: train LoRA adapters of this rank only
        lora_alpha: float = 16.0
        lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
        lr: float = 3e-4
        weight_decay: float = 0.0

    def __init__(self, config: Config, data: DataInfo) -> None:
        super().__init__(config, data)
        transformers = require_transformers()
        #: the ``transformers`` tokenizer of a pretrained model (None for a fresh architecture)
        self.hf_tokenizer: Any = None
        #: a T5-style model (AutoModelForSeq2SeqLM): the prompt is its encoder's source
        self.encoder_decoder = False
        if config.pretrained:
            self.hf_tokenizer = load_hf_tokenizer(config.pretrained)
            self.tokenizer = Tokenizer(self.hf_tokenizer.backend_tokenizer, f"hf:{config.pretrained}")
            try:
                self.encoder_decoder = bool(transformers.AutoConfig.from_pretrained(config.pretrained)
                                            .is_encoder_decoder)
                auto = transformers.AutoModelForSeq2SeqLM if self.encoder_decoder else transformers.AutoModelForCausalLM
                self.lm = auto.from_pretrained(config.pretrained, dtype=torch.float32)
            except (OSError, ValueError) as err:
                raise GenzooError(f"cannot load the model '{config.pretrained}': {err}") from None
            hf_tok = self.hf_tokenizer
            self.bos = hf_tok.bos_token_id if hf_tok.bos_token_id is not None else hf_tok.eos_token_id
            if self.bos is None and not self.encoder_decoder:
                raise GenzooError(f"'{config.pretrained}' has neither a BOS nor an EOS token to start sequences")
            self.vocab_out = self.lm.get_output_embeddings().weight.shape[0]
            if self.encoder_decoder:  # the id separating source and decoder prefix: outside the vocabulary
                self.bos = self.vocab_out
        else:  # one extra embedding row for BOS; its logit is cut off in forward
            self.lm = transformers.AutoModelForCausalLM.from_config(self._fresh_config(transformers))
        if self.pairs is not None and not self.encoder_decoder:
            raise ConfigError("a causal language model has no encoder for the sources of pair data: train seq2seq "
                              "or an encoder-decoder hf:NAME (T5-style) on it")
        if data.levels and data.levels > self.vocab_out:
            raise ConfigError(f"the data has {data.levels} token ids but the model only {self.vocab_out}; tokenise "
                              f"it with the model's tokenizer (text:FILE#tokenizer=hf:{config.pretrained})")
        self.max_positions = getattr(self.lm.config, "max_position_embeddings", None) or \
            getattr(self.lm.config, "n_positions", None)
        if config.lora_rank:
            apply_lora(self.lm, config.lora_rank, config.lora_alpha, config.lora_dropout, "all-linear")
        # transformers 5 renamed the KV-cache argument and output `past_key_values` -> `cache` (old name gone in 5.40)
        self.cache_name = "cache" if "cache" in inspect.signature(self.lm.forward).parameters else "past_key_values"

    def _fresh_config(self, transformers: Any) -> Any:
        c = self.config
        common = {"vocab_size": self.vocab_out + 1, "bos_token_id": self.bos, "eos_token_id": self.bos}
        if c.architecture == "gpt2":
            return transformers.GPT2Config(n_positions=self.seq_len, n_embd=c.width, n_layer=c.layers, n_head=c.heads,
                                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
        return transformers.LlamaConfig(hidden_size=c.width, intermediate_size=4 * c.width, num_hidden_layers=c.layers,
                                         num_attention_heads=c.heads, max_position_embeddings=self.seq_len, **common)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.lm(input_ids=inputs, use_cache=False).logits[..., : self.vocab_out]

    @property
    def continues_prompt(self) -> bool:  # type: ignore[override]
        """A causal model continues its prompt; an encoder-decoder answers it."""
        return not self.encoder_decoder

    def target_logits(self, source: Tensor, decoder_ids: Tensor) -> Tensor:
        if not self.encoder_decoder:
            if source.shape[1]:
                raise GenzooError("a causal language model has no encoder: it reads no source")
            return self(decoder_ids)
        hidden, mask = self._encode_source(source)
        return self._decode(decoder_ids, hidden, mask, None)[0]

    # ----- encoder-decoder: the source's encoding and the decoder's cache are the decoding state -------------------
    def _encode_source(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """(B, S) right-padded sources -> encoder output (B, S + 1, d) of each source followed by ``</s>``, and the
        attention mask of its non-padding positions."""
        pad = self.lm.config.pad_token_id
        ids = torch.cat([source, source.new_full((len(source), 1), pad)], dim=1)
        ids[torch.arange(len(ids)), (source != pad).sum(1)] = self.lm.config.eos_token_id
        mask = (ids != pad).long()
        return self.lm.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state, mask

    def _decode(self, decoder_ids: Tensor, hidden: Tensor, mask: Tensor, past: Any) -> tuple[Tensor, Any]:
        """Logits (B, t, V) of decoder ids that start with ``bos`` (read as the model's decoder start id) or, with
        ``past``, continue the cached ones; and the extended cache."""
        if past is None:
            decoder_ids = decoder_ids.clone()
            decoder_ids[:, 0] = self.lm.config.decoder_start_token_id
        cache = {} if past is None else {self.cache_name: past}
        out = self.lm(encoder_outputs=(hidden,), attention_mask=mask, decoder_input_ids=decoder_ids,
                      use_cache=True, **cache)
        return out.logits[..., : self.vocab_out], out[self.cache_name]

    def prefill(self, ids: Tensor) -> tuple[Tensor, Any]:
        if self.encoder_decoder:
            source, decoder_ids = split_prompt(ids, self.bos)
            hidden, mask = self._encode_source(source)
            logits, past = self._decode(decoder_ids, hidden, mask, None)
            return logits[:, -1], (past, hidden, mask)
        out = self.lm(input_ids=self.window(ids), use_cache=True)
        return out.logits[:, -1, : self.vocab_out], (out[self.cache_name], ids)

    def extend(self, token: Tensor, state: Any) -> tuple[Tensor, Any]:
        if self.encoder_decoder:
            past, hidden, mask = state
            logits, past = self._decode(token[:, None], hidden, mask, past)
            return logits[:, -1], (past, hidden, mask)
        past, ids = state
        ids = torch.cat([ids, token[:, None]], dim=1)
        if self.max_positions is not None and ids.shape[1] > self.max_positions:
            return self.prefill(ids)
        out = self.lm(input_ids=token[:, None], use_cache=True, **{self.cache_name: past})
        return out.logits[:, -1, : self.vocab_out], (out[self.cache_name], ids)

    def use_tokenizer(self, tokenizer: Tokenizer) -> None:
        """A pretrained model reads text only through its own tokenizer: the data must have been tokenised by it."""
        if self.tokenizer is not None and tokenizer.sha256 != self.tokenizer.sha256:
            raise ConfigError(f"the data was tokenised with '{tokenizer.source}', but the pretrained model reads text "
                              f"with its own tokenizer: use text:FILE#tokenizer=hf:{self.config.pretrained}")
        super().use_tokenizer(tokenizer)

    @classmethod
    def data_options(cls, config: ModelConfig) -> dict[str, Any]:
        """A pretrained model reads text with its own tokenizer."""
        pretrained = getattr(config, "pretrained", "")
        return {"tokenizer": f"hf:{pretrained}"} if pretrained else {}

    @classmethod
    def from_pretrained(cls, name: str, **options: Any) -> HFCausalLM:
        """``hf:NAME`` as a model source (``genzoo.load("hf:gpt2")``): see :func:`load_pretrained`."""
        return load_pretrained(name, **options)

    # ----- capabilities ----------------------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        """``chat`` only with a chat template in the tokenizer (instruction-tuned models)."""
        caps = set(super().capabilities)
        if not self.has_chat_template:
            caps.discard(Capability.CHAT)
        return frozenset(caps)

    @property
    def has_chat_template(self) -> bool:
        return self.hf_tokenizer is not None and bool(getattr(self.hf_tokenizer, "chat_template", None))

    # ----- text ------------------------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> list[int]:
        if self.encoder_decoder:  # the source, as the pair data reads it (the encoder adds </s>)
            return super().prompt_ids(prompt)
        if self.hf_tokenizer is None:
            return TokenSequenceModel.prompt_ids(self, prompt)
        # as Hugging Face generate: the tokenizer adds its own BOS if it has one; GPT-2 style ones add nothing
        return self.hf_tokenizer.encode(prompt, add_special_tokens=True) or [self.bos]

    def decode_tokens(self, ids: list[int]) -> str:
        if self.hf_tokenizer is None:
            return super().decode_tokens(ids)
        return self.hf_tokenizer.decode(ids, skip_special_tokens=True)

    @property
    def eos_ids(self) -> frozenset[int]:
        """The tokenizer's EOS and every id in ``generation_config.eos_token_id`` (an int or a list)."""
        if self.hf_tokenizer is None:
            return frozenset()
        configured = getattr(self.lm.generation_config, "eos_token_id", None)
        ids = configured if isinstance(configured, list) else [configured]
        return frozenset(i for i in (self.hf_tokenizer.eos_token_id, *ids) if i is not None)

    def chat_prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The token ids of a conversation rendered by the model's chat template, ready for the answer."""
        if not self.has_chat_template:
            raise GenzooError(f"this model ({self.config.pretrained or 'hf'}) has no chat template; use "
                              "generate(prompt) instead")
        return list(self.hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                          return_dict=False))

    def chat(self, messages: list[dict[str, str]], **generation: Any) -> str | list[str]:
        """Answer a conversation ``[{"role": "user", "content": ...}, ...]`` through the model's chat template."""
        return self.generate_from_ids(self.chat_prompt_ids(messages), **generation)

    def save_assets(self, directory: Path) -> None:
        if self.hf_tokenizer is None:
            super().save_assets(directory)
        else:
            self.hf_tokenizer.backend_tokenizer.save(str(Path(directory) / "tokenizer.json"))

    def load_assets(self, directory: Path) -> None:
        if self.hf_tokenizer is None:
            super().load_assets(directory)


def load_pretrained(name: str, *, lora_rank: int = 0) -> HFCausalLM:
    """A Hugging Face causal or encoder-decoder LM (hub id or local folder) as a genzoo model, in eval mode."""
    transformers = require_transformers()
    try:
        cfg = transformers.AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise GenzooError(f"cannot load the config of '{name}': {err}") from None
    context = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 1024
    model = HFCausalLM(HFCausalLM.Config(pretrained=name, lora_rank=lora_rank), _pretrained_info(name, context))
    return model.with_provenance(run=f"hf:{name}", checkpoint="pretrained", step=None, weights="pretrained").eval()


def _pretrained_info(name: str, context: int) -> DataInfo:
    """The DataInfo of a pretrained model: tokens of its own tokenizer (recorded, so data can be checked against
    it), ``PRETRAINED_SAMPLE_LEN`` of them per sample."""
    tok = load_hf_tokenizer(name)
    meta = Tokenizer(tok.backend_tokenizer, f"hf:{name}").metadata()
    return DataInfo(kind=DataKind.TOKENS, shape=(min(context, PRETRAINED_SAMPLE_LEN),), levels=len(tok),
                    spec=f"hf:{name}", extra={"tokenizer": meta})
