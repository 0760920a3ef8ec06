// Patching view: PatchSweep patches one site from a clean prompt into a corrupted one, cell by
// cell (layer x position, or layer x head), and shows the logit difference recovered.

import { useEffect, useState } from "react";
import { api } from "../api/client";
import { useCall } from "../api/useCall";
import { MatrixHeatmap } from "../components/heatmaps";
import { Busy, Card, Empty, ErrorBox } from "../components/ui";
import { SweepBy, type PatchSweepResponse } from "../gen/tdb/v1/inference_pb";
import { fmt } from "../lib/color";
import { decode } from "../lib/tensor";
import { navigate, useQuery, withParams } from "../lib/url";

const DEFAULT_CLEAN = "When Mary and John went to the store, John gave a drink to";
const DEFAULT_CORRUPTED = "When Mary and John went to the store, Mary gave a drink to";
const SITES = ["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "attn.hook_z", "attn.hook_result", "mlp.hook_post"];

export function PatchPage() {
  const q = useQuery();
  const clean = q.get("clean") ?? "";
  const corrupted = q.get("corrupted") ?? "";
  const site = q.get("site") ?? "hook_resid_pre";
  const by = q.get("by") === "head" ? "head" : "position";
  const target = q.getAll("target").length ? q.getAll("target") : [" Mary"];
  const distractor = q.getAll("distractor").length ? q.getAll("distractor") : [" John"];
  const model = q.get("model") ?? "";
  const [f, setF] = useState({ clean: clean || DEFAULT_CLEAN, corrupted: corrupted || DEFAULT_CORRUPTED, site, by, target: target.join("|"), distractor: distractor.join("|") });
  useEffect(
    () => setF({ clean: clean || DEFAULT_CLEAN, corrupted: corrupted || DEFAULT_CORRUPTED, site, by, target: target.join("|"), distractor: distractor.join("|") }),
    [q.toString()], // eslint-disable-line react-hooks/exhaustive-deps
  );
  const call = useCall<PatchSweepResponse>();
  useEffect(() => {
    if (!clean || !corrupted) return;
    void call.run((signal) =>
      api.inference.patchSweep(
        {
          model,
          clean: { input: { case: "text", value: clean } },
          corrupted: { input: { case: "text", value: corrupted } },
          site,
          by: by === "head" ? SweepBy.HEAD : SweepBy.POSITION,
          target: { strings: target },
          distractor: { strings: distractor },
        },
        { signal },
      ),
    );
  }, [q.toString()]); // eslint-disable-line react-hooks/exhaustive-deps
  const d = call.data;
  const split = (x: string) => x.split("|").filter((t) => t.length > 0);
  return (
    <div className="page">
      <Card
        title="Activation patching"
        tip="Each cell patches the site (at one layer and position, or one head) from the clean run into the corrupted run; colour = (LD_patched − LD_corrupted) / (LD_clean − LD_corrupted): 1 recovers the clean logit difference, 0 changes nothing."
        actions={<Busy loading={call.loading} started={call.started} label="PatchSweep" onCancel={call.cancel} />}
      >
        <form
          className="params"
          onSubmit={(e) => {
            e.preventDefault();
            navigate(withParams(q, { clean: f.clean, corrupted: f.corrupted, site: f.site, by: f.by, target: split(f.target), distractor: split(f.distractor) }));
          }}
        >
          <div className="prompts">
            <label className="field grow">
              <span>Clean prompt</span>
              <textarea rows={2} value={f.clean} onChange={(e) => setF({ ...f, clean: e.target.value })} />
            </label>
            <label className="field grow">
              <span>Corrupted prompt (same number of tokens)</span>
              <textarea rows={2} value={f.corrupted} onChange={(e) => setF({ ...f, corrupted: e.target.value })} />
            </label>
          </div>
          <div className="field-row">
            <label className="field">
              <span title="A per-layer site kind">Site</span>
              <select value={f.site} onChange={(e) => setF({ ...f, site: e.target.value })}>
                {SITES.map((x) => (
                  <option key={x}>{x}</option>
                ))}
              </select>
            </label>
            <label className="field">
              <span>Grid</span>
              <select value={f.by} onChange={(e) => setF({ ...f, by: e.target.value as "head" | "position" })}>
                <option value="position">layer × position</option>
                <option value="head">layer × head</option>
              </select>
            </label>
            <label className="field">
              <span>Target tokens</span>
              <input className="mono" value={f.target} onChange={(e) => setF({ ...f, target: e.target.value })} />
            </label>
            <label className="field">
              <span>Distractor tokens</span>
              <input className="mono" value={f.distractor} onChange={(e) => setF({ ...f, distractor: e.target.value })} />
            </label>
            <span className="grow" />
            <button className="btn primary" type="submit">
              Run
            </button>
          </div>
        </form>
        <ErrorBox error={call.error} what="PatchSweep" />
        {!clean && <Empty>Fill in two prompts of the same length and press Run.</Empty>}
        {d && d.recovered && (
          <div data-testid="patch-result">
            <div className="lossbar">
              <span className="muted">Logit difference</span>
              <span className="lossval">
                clean <strong>{fmt(d.cleanLogitDiff)}</strong>
              </span>
              <span className="lossval">
                corrupted <strong>{fmt(d.corruptedLogitDiff)}</strong>
              </span>
              <span className="muted small">site {d.site}</span>
            </div>
            <MatrixHeatmap
              rowLabels={d.layers.map((l) => `L${l}`)}
              colLabels={d.columnLabels}
              values={decode(d.recovered).data}
              signed
              max={1}
              rowTitle="layer"
              colTitle={d.by === SweepBy.HEAD ? "head" : "position"}
              testid="patch-heatmap"
            />
            <div className="muted small">Colour scale: fraction of the logit difference recovered, −1 … 1 (blue recovers the clean answer).</div>
          </div>
        )}
      </Card>
    </div>
  );
}
