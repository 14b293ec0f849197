# BEAM load for `chat-bench-beam`: ExMessenger clients on BEAM nodes, as the original's
# clients are, measuring how fast a server delivers room messages to them.
#
# Receiver nodes (role=receiver) join `nicks` nicks each (comma-separated) and count the
# copies of each numbered message their message_handler gets; once a message has reached
# all of the node's nicks the node acknowledges it to the sender node. The sender node
# (role=sender) joins as `sender` and says `total` numbered messages, keeping `window`
# of them unacknowledged by some receiver node, then prints the time the last `total -
# warmup` took. Every node talks to `server` (a node name) with the cookie it was started
# with. Lines on standard output: `joined`, `start`, `measuring` (the warm-up is over),
# `done <seconds> <messages>`. `warmup` must be at least 1.

defmodule BeamLoad.Receiver do
  use GenServer

  def start(sender_node, copies),
    do: GenServer.start(__MODULE__, {sender_node, copies}, name: :message_handler)

  @impl true
  def init({sender_node, copies}), do: {:ok, {sender_node, copies, %{}}}

  @impl true
  def handle_cast({:message, "sender", text}, {sender_node, copies, counts}) do
    case Integer.parse(text) do
      {k, ""} ->
        n = Map.get(counts, k, 0) + 1

        if n == copies do
          send({:bench_sender, sender_node}, {:ack, k})
          {:noreply, {sender_node, copies, Map.delete(counts, k)}}
        else
          {:noreply, {sender_node, copies, Map.put(counts, k, n)}}
        end

      _ ->
        {:noreply, {sender_node, copies, counts}}
    end
  end

  def handle_cast(_other, state), do: {:noreply, state}
end

defmodule BeamLoad.Sink do
  use GenServer
  def start, do: GenServer.start(__MODULE__, nil, name: :message_handler)
  @impl true
  def init(nil), do: {:ok, nil}
  @impl true
  def handle_cast(_message, state), do: {:noreply, state}
end

defmodule BeamLoad do
  def env(name), do: System.fetch_env!(name)
  def int(name), do: env(name) |> String.to_integer()

  def join(server, nick) do
    case GenServer.call({:message_server, server}, {:connect, nick}, 30_000) do
      {:ok, _} -> :ok
      other -> raise "join #{nick} refused: #{inspect(other)}"
    end
  end

  def main do
    server = env("server") |> String.to_atom()
    true = Node.connect(server)

    case env("role") do
      "receiver" -> receiver(server)
      "sender" -> sender(server)
    end
  end

  def receiver(server) do
    nicks = env("nicks") |> String.split(",")
    sender_node = env("sender_node") |> String.to_atom()
    {:ok, _} = BeamLoad.Receiver.start(sender_node, length(nicks))
    Enum.each(nicks, &join(server, &1))
    IO.puts("joined")
    Process.sleep(:infinity)
  end

  def sender(server) do
    Process.register(self(), :bench_sender)
    {:ok, _} = BeamLoad.Sink.start()
    receivers = int("receivers")
    total = int("total")
    warmup = int("warmup")
    window = int("window")
    join(server, "sender")
    IO.puts("joined")
    # Wait for the driver's go (a line on standard input) so every node is in.
    IO.gets("")
    IO.puts("start")
    run(server, 0, 0, %{}, total, warmup, window, receivers, nil)
  end

  # sent: messages said so far; done: fully acknowledged; acks: per message, nodes that
  # acknowledged it; t0: time the measured part started.
  defp run(server, sent, done, acks, total, warmup, window, receivers, t0) do
    cond do
      done == total ->
        seconds = (System.monotonic_time(:microsecond) - t0) / 1.0e6
        IO.puts("done #{seconds} #{total - warmup}")
        System.halt(0)

      sent < total and sent - done < window ->
        GenServer.cast({:message_server, server}, {:say, "sender", Integer.to_string(sent)})
        run(server, sent + 1, done, acks, total, warmup, window, receivers, t0)

      true ->
        receive do
          {:ack, k} ->
            n = Map.get(acks, k, 0) + 1

            if n == receivers do
              done = done + 1
              t0 =
                if done == warmup do
                  IO.puts("measuring")
                  System.monotonic_time(:microsecond)
                else
                  t0
                end

              run(server, sent, done, Map.delete(acks, k), total, warmup, window, receivers, t0)
            else
              run(server, sent, done, Map.put(acks, k, n), total, warmup, window, receivers, t0)
            end
        end
    end
  end
end

BeamLoad.main()
