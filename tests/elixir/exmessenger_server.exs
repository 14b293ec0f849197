# An ExMessenger server node, written from the term shapes of issue 9 and the blog post
# (shared/seed/exmessenger-blog.md): a GenServer registered locally as :message_server,
# standing for the original in chat-client's interop tests and in the BEAM throughput
# benchmark.
#
#   elixir --sname server@localhost --cookie chocolate-chip exmessenger_server.exs
#
# Semantics, as the original's: {:connect, nick} -> {:ok, "a:b:c"} | :nick_in_use |
# :nick_not_allowed (the nick "server"); {:disconnect, nick} -> :ok | :user_not_found |
# :not_allowed (another node's nick); casts {:say, nick, text}, {:private_message, from,
# to, text}, {:list_users, nick}. Every line a client sees is a cast
# {:message, nick, body} to {:message_handler, node}, broadcast as the original does it:
# one Task per recipient, awaited. Joins and leaves read "* nick has joined *" /
# "* nick has left *"; /users answers from "server" with "users: a, b". Like chat-server,
# a private message arrives from "<nick> (private)". Like the original, nicks stay until
# disconnected (a crashed client keeps its nick). Prints "ready" once registered.

defmodule ExmServer do
  use GenServer

  def start_link, do: GenServer.start_link(__MODULE__, %{}, name: :message_server)

  @impl true
  def init(users), do: {:ok, users}

  @impl true
  def handle_call({:connect, nick}, {from, _tag}, users) do
    cond do
      nick == :server or nick == "server" ->
        {:reply, :nick_not_allowed, users}

      Map.has_key?(users, nick) ->
        {:reply, :nick_in_use, users}

      true ->
        users = Map.put(users, nick, node(from))
        GenServer.cast(:message_server, {:say, nick, "* #{nick} has joined *"})
        {:reply, {:ok, users |> Map.keys() |> Enum.sort() |> Enum.join(":")}, users}
    end
  end

  def handle_call({:disconnect, nick}, {from, _tag}, users) do
    case Map.fetch(users, nick) do
      :error ->
        {:reply, :user_not_found, users}

      {:ok, owner} when owner != node(from) ->
        {:reply, :not_allowed, users}

      {:ok, _} ->
        users = Map.delete(users, nick)
        broadcast(users, nick, "* #{nick} has left *")
        {:reply, :ok, users}
    end
  end

  @impl true
  def handle_cast({:say, nick, text}, users) do
    broadcast(Map.delete(users, nick), nick, text)
    {:noreply, users}
  end

  def handle_cast({:private_message, from, to, text}, users) do
    case Map.fetch(users, to) do
      {:ok, node} -> send_message(node, "#{from} (private)", text)
      :error -> :ok
    end

    {:noreply, users}
  end

  def handle_cast({:list_users, nick}, users) do
    case Map.fetch(users, nick) do
      {:ok, node} ->
        send_message(node, "server", "users: " <> (users |> Map.keys() |> Enum.sort() |> Enum.join(", ")))

      :error ->
        :ok
    end

    {:noreply, users}
  end

  defp broadcast(users, nick, text) do
    users
    |> Enum.map(fn {_, node} -> Task.async(fn -> send_message(node, nick, text) end) end)
    |> Enum.map(&Task.await/1)
  end

  defp send_message(node, nick, text) do
    GenServer.cast({:message_handler, node}, {:message, nick, text})
  end
end

{:ok, _} = ExmServer.start_link()
IO.puts("ready")
Process.sleep(:infinity)
