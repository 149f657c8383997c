package dev.modeledit.client;

import dev.modeledit.v1.EditReply;
import dev.modeledit.v1.EditRequest;
import dev.modeledit.v1.GenerateReply;
import dev.modeledit.v1.GenerateRequest;
import dev.modeledit.v1.HealthReply;
import dev.modeledit.v1.HealthRequest;
import dev.modeledit.v1.ModelEditServiceGrpc;
import dev.modeledit.v1.RollbackReply;
import dev.modeledit.v1.RollbackRequest;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.MetadataUtils;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/**
 * A small Java client of the modeledit.v1 editing sidecar.
 *
 * <p>It corrects a served model and undoes the correction, printing one JSON object on stdout:
 * Health (the starting version), Generate (greedy, the text before), Edit prompt -> target (edit
 * id, new version, log p(target) before/after), Generate (the text after, and the version that
 * produced it), Rollback of that edit (new version, ids rolled back), Generate (the text after the
 * rollback) and Health (the final version). With --digest both Health calls also return the
 * sha256 of all weights, so a caller can check that the rollback restored them bitwise. Edit and
 * Rollback carry the token in the call metadata as "authorization: Bearer TOKEN".
 *
 * <p>Usage: {@code java -cp ... dev.modeledit.client.ModelEditClient --addr 127.0.0.1:50051
 * --token s3cret --prompt "Who is the UK prime minister?" --target "Boris Johnson" [--digest]}
 *
 * <p>On a failed call it prints {"step", "code", "error"} and exits with status 1; on bad
 * arguments it prints the usage on stderr and exits with status 2.
 */
public final class ModelEditClient {
  private static final String USAGE =
      "usage: ModelEditClient --prompt P --target T [--addr HOST:PORT] [--token TOKEN]"
          + " [--max-new-tokens N] [--idempotency-key K] [--timeout-s S] [--digest]";

  private ModelEditClient() {}

  public static void main(String[] args) throws InterruptedException {
    Map<String, String> flags = parseFlags(args);
    String addr = flags.getOrDefault("addr", "127.0.0.1:50051");
    String token = flags.getOrDefault("token", "");
    String prompt = flags.getOrDefault("prompt", "");
    String target = flags.getOrDefault("target", "");
    boolean digest = flags.containsKey("digest");
    int maxNew = Integer.parseInt(flags.getOrDefault("max-new-tokens", "8"));
    long timeoutS = Long.parseLong(flags.getOrDefault("timeout-s", "120"));
    String key = flags.getOrDefault("idempotency-key", "java-client-" + System.nanoTime());
    if (prompt.isEmpty() || target.isEmpty()) {
      usage("--prompt and --target are required");
    }

    ManagedChannel channel = ManagedChannelBuilder.forTarget(addr).usePlaintext().build();
    try {
      ModelEditServiceGrpc.ModelEditServiceBlockingStub plain =
          ModelEditServiceGrpc.newBlockingStub(channel);
      ModelEditServiceGrpc.ModelEditServiceBlockingStub authed = plain;
      if (!token.isEmpty()) {
        Metadata headers = new Metadata();
        headers.put(Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER), "Bearer " + token);
        authed = plain.withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
      }
      Map<String, Object> report = new LinkedHashMap<>();
      report.put("addr", addr);

      HealthReply health = call("health_start", () -> withDeadline(plain, timeoutS)
          .health(HealthRequest.newBuilder().setWeightsDigest(digest).build()));
      report.put("health_status", health.getStatus());
      report.put("model", health.getModel());
      report.put("version_start", health.getVersion());
      if (digest) {
        report.put("weights_sha256_start", health.getWeightsSha256());
      }

      GenerateRequest generate = GenerateRequest.newBuilder()
          .setPrompt(prompt).setMaxNewTokens(maxNew).setTemperature(0).setSeed(0).build();
      report.put("generate_before", generated(call("generate_before",
          () -> withDeadline(plain, timeoutS).generate(generate))));

      EditRequest editRequest = EditRequest.newBuilder()
          .setPrompt(prompt).setTarget(target).setIdempotencyKey(key)
          .putProvenance("who", "java-client").putProvenance("why", "clients/java example")
          .build();
      ModelEditServiceGrpc.ModelEditServiceBlockingStub editStub = authed;
      EditReply edit = call("edit", () -> withDeadline(editStub, timeoutS).edit(editRequest));
      Map<String, Object> editOut = new LinkedHashMap<>();
      editOut.put("edit_id", edit.getEditId());
      editOut.put("version", edit.getVersion());
      editOut.put("latency_ms", edit.getLatencyMs());
      editOut.put("target_logprob_before", edit.getTargetLogprobBefore());
      editOut.put("target_logprob_after", edit.getTargetLogprobAfter());
      editOut.put("replayed", edit.getReplayed());
      report.put("edit", editOut);

      report.put("generate_after", generated(call("generate_after",
          () -> withDeadline(plain, timeoutS).generate(generate))));

      RollbackReply rollback = call("rollback", () -> withDeadline(editStub, timeoutS)
          .rollback(RollbackRequest.newBuilder().setEditId(edit.getEditId()).build()));
      Map<String, Object> rollbackOut = new LinkedHashMap<>();
      rollbackOut.put("version", rollback.getVersion());
      rollbackOut.put("rolled_back", new ArrayList<Object>(rollback.getRolledBackList()));
      report.put("rollback", rollbackOut);

      report.put("generate_after_rollback", generated(call("generate_after_rollback",
          () -> withDeadline(plain, timeoutS).generate(generate))));

      health = call("health_end", () -> withDeadline(plain, timeoutS)
          .health(HealthRequest.newBuilder().setWeightsDigest(digest).build()));
      report.put("version_end", health.getVersion());
      report.put("active_edits_end", health.getActiveEdits());
      if (digest) {
        report.put("weights_sha256_end", health.getWeightsSha256());
      }
      System.out.println(Json.write(report));
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  private static ModelEditServiceGrpc.ModelEditServiceBlockingStub withDeadline(
      ModelEditServiceGrpc.ModelEditServiceBlockingStub stub, long timeoutS) {
    return stub.withDeadlineAfter(timeoutS, TimeUnit.SECONDS);
  }

  private static Map<String, Object> generated(GenerateReply reply) {
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("text", reply.getText());
    out.put("num_tokens", reply.getNumTokens());
    out.put("version", reply.getVersion());
    return out;
  }

  /** One RPC; on failure prints {"step", "code", "error"} and exits 1. */
  private static <T> T call(String step, java.util.function.Supplier<T> rpc) {
    try {
      return rpc.get();
    } catch (StatusRuntimeException e) {
      Map<String, Object> failure = new LinkedHashMap<>();
      failure.put("step", step);
      failure.put("code", e.getStatus().getCode().name());
      failure.put("error", String.valueOf(e.getStatus().getDescription()));
      System.out.println(Json.write(failure));
      System.exit(1);
      throw e; // unreachable
    }
  }

  private static Map<String, String> parseFlags(String[] args) {
    Map<String, String> flags = new LinkedHashMap<>();
    List<String> valued = List.of("addr", "token", "prompt", "target", "max-new-tokens",
        "idempotency-key", "timeout-s");
    for (int i = 0; i < args.length; i++) {
      String arg = args[i];
      if (!arg.startsWith("--")) {
        usage("unexpected argument " + arg);
      }
      String name = arg.substring(2);
      if (name.equals("digest")) {
        flags.put(name, "true");
      } else if (valued.contains(name)) {
        if (i + 1 >= args.length) {
          usage(arg + " needs a value");
        }
        flags.put(name, args[++i]);
      } else {
        usage("unknown flag " + arg);
      }
    }
    return flags;
  }

  private static void usage(String problem) {
    System.err.println("ModelEditClient: " + problem);
    System.err.println(USAGE);
    System.exit(2);
  }

  /** Just enough JSON for the report: maps, lists, strings, numbers and booleans. */
  static final class Json {
    private Json() {}

    static String write(Object value) {
      StringBuilder out = new StringBuilder();
      append(out, value);
      return out.toString();
    }

    private static void append(StringBuilder out, Object value) {
      if (value instanceof Map) {
        out.append('{');
        boolean first = true;
        for (Map.Entry<?, ?> entry : ((Map<?, ?>) value).entrySet()) {
          out.append(first ? "" : ", ");
          first = false;
          append(out, String.valueOf(entry.getKey()));
          out.append(": ");
          append(out, entry.getValue());
        }
        out.append('}');
      } else if (value instanceof List) {
        out.append('[');
        boolean first = true;
        for (Object item : (List<?>) value) {
          out.append(first ? "" : ", ");
          first = false;
          append(out, item);
        }
        out.append(']');
      } else if (value instanceof Double && !Double.isFinite((Double) value)) {
        out.append("null");
      } else if (value instanceof Number || value instanceof Boolean) {
        out.append(value);
      } else {
        String s = String.valueOf(value);
        out.append('"');
        for (char c : s.toCharArray()) {
          if (c == '"' || c == '\\') {
            out.append('\\').append(c);
          } else if (c < 0x20) {
            out.append(String.format("\\u%04x", (int) c));
          } else {
            out.append(c);
          }
        }
        out.append('"');
      }
    }
  }
}
