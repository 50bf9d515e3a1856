"""``lstm``: a recurrent language model (LSTM, Hochreiter & Schmidhuber 1997; or GRU, Cho et al. 2014).

Each token embedding updates a stack of recurrent cells, h_t = cell(e(x_t), h_{t-1}); a linear layer reads the top
state into next-token logits, p(x_{t+1} | x_<=t) = softmax(W h_t + b). The recurrent state is the generation cache:
a new token costs one cell update, and there is no context limit (generation may run past the training window).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field
from torch import Tensor, nn

from genzoo.contract import DataInfo, ModelConfig
from genzoo.models.autoregressive.sequence import TokenSequenceModel
from genzoo.registry import register


@register
class LSTM(TokenSequenceModel):
    """Recurrent (LSTM or GRU) language model over tokens or pixel sequences."""

    name = "lstm"
    quick_steps = 600
    export_module = TokenSequenceModel.causal_export  # next-token logits over a fixed window
    family = "autoregressive"
    smoke_config: ClassVar[dict[str, Any]] = {"layers": 1, "width": 16}

    class Config(ModelConfig):
        cell: Literal["lstm", "gru"] = "lstm"
        layers: int = Field(2, ge=1)
        width: int = Field(256, ge=1)
        embed_dim: int = Field(64, ge=1)
        dropout: float = Field(0.0, ge=0.0, lt=1.0)
        lr: float = 3e-3
        weight_decay: float = 0.0

    def __init__(self, config: Config, data: DataInfo) -> None:
        super().__init__(config, data)
        c = config
        self.embed = nn.Embedding(self.vocab_out + 1, c.embed_dim)  # + BOS
        rnn = nn.LSTM if c.cell == "lstm" else nn.GRU
        self.rnn = rnn(c.embed_dim, c.width, c.layers, batch_first=True, dropout=c.dropout if c.layers > 1 else 0.0)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.width, self.vocab_out)

    def _run(self, ids: Tensor, state: Any) -> tuple[Tensor, Any]:
        out, state = self.rnn(self.embed(ids), state)
        return self.head(self.drop(out)), state

    def forward(self, inputs: Tensor) -> Tensor:
        return self._run(inputs, None)[0]

    def prefill(self, ids: Tensor) -> tuple[Tensor, Any]:
        logits, state = self._run(ids, None)
        return logits[:, -1], state

    def extend(self, token: Tensor, state: Any) -> tuple[Tensor, Any]:
        logits, state = self._run(token[:, None], state)
        return logits[:, -1], state

    def reorder_state(self, state: Any, index: Tensor) -> Any:
        """The recurrent state of rows ``index`` (beam search): the batch is dimension 1 of (layers, B, width)."""
        return tuple(s.index_select(1, index) for s in state) if isinstance(state, tuple) else \
            state.index_select(1, index)

    def token_flops(self, position: int) -> float:
        """Forward FLOPs of one token (the same at every position): per layer, 4 (LSTM) or 3 (GRU) gates of
        2 * width * (input + width), then the output layer's 2 * width * V."""
        c = self.config
        gates = 4 if c.cell == "lstm" else 3
        inputs = [c.embed_dim] + [c.width] * (c.layers - 1)
        return float(sum(2 * gates * c.width * (d + c.width) for d in inputs) + 2 * c.width * self.vocab_out)
