"""Tests of the pure-Python parts of bench/peers (record parsing, membw fractions, the table)."""
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402


def gbench_entry(name, aggregate=None, **counters):
    e = dict(name=name + (f"_{aggregate}" if aggregate else ""), run_name=name,
             run_type="aggregate" if aggregate else "iteration", **counters)
    if aggregate:
        e["aggregate_name"] = aggregate
    return e


class WeightBytes(unittest.TestCase):
    def test_ggml_block_sizes(self):  # q4_0 18 B / 32, q4_K 144 B / 256, mxfp4 17 B / 32
        self.assertEqual(results.ggml_weight_bytes("q4_0", 4096, 11008), 11008 * 128 * 18)
        self.assertEqual(results.ggml_weight_bytes("q4_K", 4096, 11008), 11008 * 16 * 144)
        self.assertEqual(results.ggml_weight_bytes("mxfp4", 11008, 4096), 4096 * 344 * 17)
        with self.assertRaises(ValueError):
            results.ggml_weight_bytes("q4_K", 4096 + 32, 8)

    def test_matmulnbits(self):  # K/2 code bytes per row + one f32 scale per block
        self.assertEqual(results.matmulnbits_weight_bytes(4096, 11008, 32), 11008 * (2048 + 128 * 4))
        self.assertEqual(results.matmulnbits_weight_bytes(4096, 11008, 128), 11008 * (2048 + 32 * 4))


class Records(unittest.TestCase):
    doc = {"benchmarks": [
        gbench_entry("membw/read/t1", "mean", bytes_per_second=9e9),
        gbench_entry("membw/read/t1", "median", bytes_per_second=20e9),
        gbench_entry("gemv/nf4_b64_bnb_i8/K4096xN11008/M1/t1/cold", bytes_per_second=16e9, GFLOPS=56.0),
        gbench_entry("gemv/nf4_b64_bnb_i8/K4096xN11008/M1/t1/cold", bytes_per_second=17e9, GFLOPS=59.0),
        gbench_entry("gemv/nf4_b64_bnb_i8/K4096xN11008/M1/t1/cold", bytes_per_second=14e9, GFLOPS=50.0),
        gbench_entry("gemv/nf4_b64_bnb_i8/K4096xN11008/M1/t1/cold", "median", bytes_per_second=15e9, GFLOPS=52.0),
        gbench_entry("gemv/nf4_b64_bnb_i8/K4096xN11008/M1/t1/cold", "stddev", bytes_per_second=1e9, GFLOPS=1.0),
        gbench_entry("gemm/int4sym_g128_qf_i8/K4096xN4096/M128/t2/hot", bytes_per_second=3e9, GFLOPS=400.0),
        gbench_entry("repack/int4sym_g128_gptq_to_qf/K4096xN11008", bytes_per_second=1e9),
    ]}

    def test_medians_and_single_runs(self):
        recs = results.records_from_gbench(self.doc, group="g")
        by_name = {r["name"]: r for r in recs}
        self.assertEqual(set(by_name), {"membw/read/t1", "gemv/nf4_b64_bnb_i8/K4096xN11008/M1/t1/cold",
                                        "gemm/int4sym_g128_qf_i8/K4096xN4096/M128/t2/hot"})
        self.assertEqual(by_name["membw/read/t1"]["bytes_per_second"], 20e9)
        gemv = by_name["gemv/nf4_b64_bnb_i8/K4096xN11008/M1/t1/cold"]
        self.assertEqual((gemv["kernel"], gemv["K"], gemv["N"], gemv["M"], gemv["threads"], gemv["mode"]),
                         ("nf4_b64_bnb_i8", 4096, 11008, 1, 1, "cold"))
        self.assertEqual(gemv["GFLOPS"], 52.0)
        self.assertEqual((gemv["best_bytes_per_second"], gemv["best_GFLOPS"]), (17e9, 59.0))

    def test_peaks_and_rooflines(self):  # peak/<path>/t<n> as ops/s; a kernel case keeps its roofline
        doc = {"benchmarks": [gbench_entry("peak/vnni/t1", GOPS=870.0), gbench_entry("peak/fma/t2", GFLOPS=420.0),
                              gbench_entry("gemm/int4sym_g128_qf_i8/K4096xN11008/M8/t1/cold", bytes_per_second=5e9,
                                           GFLOPS=100.0, roofline=0.4)]}
        recs = {r["name"]: r for r in results.merge_rounds(results.attach_membw(results.records_from_gbench(doc)))}
        self.assertEqual((recs["peak/vnni/t1"]["source"], recs["peak/vnni/t1"]["kernel"]), ("peak", "vnni"))
        self.assertEqual(recs["peak/vnni/t1"]["ops_per_second"], 870e9)
        self.assertEqual((recs["peak/fma/t2"]["threads"], recs["peak/fma/t2"]["ops_per_second"]), (2, 420e9))
        self.assertEqual(recs["gemm/int4sym_g128_qf_i8/K4096xN11008/M8/t1/cold"]["roofline"], 0.4)

    def test_membw_fraction_prefers_the_same_group(self):
        recs = results.records_from_gbench(self.doc, group="g")
        recs.append(dict(source="membw", kernel="membw", op="membw", threads=1, name="membw/read/t1",
                         bytes_per_second=30e9, group="other"))
        recs.append(results.make_record("ggml", "ggml_q4_0", "gemv", 4096, 11008, 1, 1, "cold", 10e9, 35.0, group="g"))
        results.attach_membw(recs)
        ggml = next(r for r in recs if r["source"] == "ggml")
        self.assertAlmostEqual(ggml["frac_membw"], 0.5)
        gemm = next(r for r in recs if r["op"] == "gemm")  # no t2 membw at all
        self.assertNotIn("frac_membw", gemm)

    def test_ratio_to_best_peer_is_a_time_ratio(self):
        recs = [results.make_record("qforge", "a", "gemv", 64, 64, 1, 1, "cold", 12e9, 60.0),
                results.make_record("ggml", "p", "gemv", 64, 64, 1, 1, "cold", 20e9, 40.0),
                results.make_record("onnxruntime", "q", "gemv", 64, 64, 1, 1, "cold", 9e9, 30.0),
                results.make_record("ggml", "p", "gemv", 64, 64, 1, 2, "cold", 20e9, 80.0)]
        rows = {r[0]: r for r in results.table(recs)}
        self.assertAlmostEqual(rows["gemv/a/K64xN64/M1/t1/cold"][4], 1.5)
        self.assertAlmostEqual(rows["gemv/q/K64xN64/M1/t1/cold"][4], 0.75)
        self.assertAlmostEqual(rows["gemv/p/K64xN64/M1/t2/cold"][4], 1.0)
        self.assertIn("gemv/a/K64xN64/M1/t1/cold", results.format_table(recs))


class Rounds(unittest.TestCase):
    def test_medians_over_rounds_each_against_its_own_membw(self):
        recs = []
        for rnd, (bw, membw, best) in enumerate([(10e9, 20e9, 11e9), (4e9, 5e9, 6e9), (12e9, 30e9, 13e9)]):
            group = f"g/round{rnd + 1}"
            recs.append(dict(source="membw", kernel="membw", op="membw", threads=1, name="membw/read/t1",
                             bytes_per_second=membw, group=group))
            recs.append(results.make_record("ggml", "p", "gemv", 64, 64, 1, 1, "cold", bw, bw / 1e9,
                                            best_bytes_per_second=best, group=group))
        merged = results.merge_rounds(results.attach_membw(recs))
        kernel = [r for r in merged if r["source"] == "ggml"]
        self.assertEqual(len(kernel), 1)
        self.assertEqual(kernel[0]["bytes_per_second"], 10e9)
        self.assertAlmostEqual(kernel[0]["frac_membw"], 0.5)  # median of 10/20, 4/5, 12/30
        self.assertEqual(kernel[0]["best_bytes_per_second"], 13e9)
        self.assertEqual(kernel[0]["rounds_bytes_per_second"], [10e9, 4e9, 12e9])
        self.assertEqual(sum(r["source"] == "membw" for r in merged), 3)


if __name__ == "__main__":
    unittest.main()
