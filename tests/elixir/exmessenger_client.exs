# An ExMessenger client node, written from the term shapes of issue 9 and the blog post
# (shared/seed/exmessenger-blog.md): it plays the original ExMessengerClient so the tests
# can check that unmodified BEAM clients join chat-server's room.
#
#   server=server@localhost nick=john elixir --sname john@localhost exmessenger_client.exs
#
# Like the original it sets its cookie in code to chocolate-chip (the environment
# variable `cookie` overrides that, for the wrong-cookie tests), connects, starts a
# GenServer registered as :message_handler that prints every
# {:"$gen_cast", {:message, nick, body}} as "<server>> <nick>: <body>", calls
# {:connect, nick} on {:message_server, server}, then reads commands from standard
# input, one per line: /join, /leave, /users, /pm <to> <text>, /quit, or text to say.
# End of input leaves and exits 0.
#
# Extra commands for tests (not in the original): `/cast <elixir term>` casts any term to
# message_server, `/call <elixir term>` calls with it and prints `reply: <inspect>`,
# `/send <elixir term>` sends a raw message to {:message_server, server}, `/ping` prints
# `ping: pong|pang`. Output lines are flushed as they are printed; there is no prompt.

defmodule ExmClient.Handler do
  use GenServer

  def start_link(server) do
    GenServer.start_link(__MODULE__, server, name: :message_handler)
  end

  @impl true
  def init(server), do: {:ok, server}

  @impl true
  def handle_cast({:message, nick, message}, server) do
    IO.puts("#{server}> #{nick}: #{String.trim_trailing(message)}")
    {:noreply, server}
  end

  def handle_cast(other, server) do
    IO.puts("unexpected cast: #{inspect(other)}")
    {:noreply, server}
  end

  @impl true
  def handle_info(other, server) do
    IO.puts("unexpected message: #{inspect(other)}")
    {:noreply, server}
  end
end

defmodule ExmClient do
  def main do
    server = System.fetch_env!("server") |> String.trim() |> String.to_atom()
    nick = System.fetch_env!("nick") |> String.trim()
    cookie = System.get_env("cookie", "chocolate-chip") |> String.to_atom()
    IO.puts("Connecting to #{server} from #{Node.self()} ...")
    Node.set_cookie(Node.self(), cookie)

    case Node.connect(server) do
      true ->
        :ok

      reason ->
        IO.puts("Could not connect to server, reason: #{reason}")
        System.halt(1)
    end

    {:ok, _} = ExmClient.Handler.start_link(server)
    IO.puts("Connected")

    case join(server, nick) do
      :ok -> loop(server, nick)
      :refused -> System.halt(1)
    end
  end

  defp join(server, nick) do
    case call(server, {:connect, nick}) do
      {:ok, users} ->
        IO.puts("* Joined the chatroom *")
        IO.puts("* Users in the room: #{users} *")
        IO.puts("* Type /help for options *")
        :ok

      reason ->
        IO.puts("Could not join chatroom, reason: #{describe(reason)}")
        :refused
    end
  end

  defp call(server, request) do
    try do
      GenServer.call({:message_server, server}, request)
    catch
      :exit, reason -> {:exit, reason}
    end
  end

  defp cast(server, request), do: GenServer.cast({:message_server, server}, request)

  defp loop(server, nick) do
    case IO.gets("") do
      :eof ->
        call(server, {:disconnect, nick})
        System.halt(0)

      {:error, _} ->
        System.halt(0)

      line ->
        handle(String.trim_trailing(line, "\n"), server, nick)
        loop(server, nick)
    end
  end

  defp handle("", _server, _nick), do: :ok

  defp handle("/join", server, nick), do: join(server, nick)

  defp handle("/leave", server, nick) do
    case call(server, {:disconnect, nick}) do
      :ok -> IO.puts("You have exited the chatroom, you can rejoin with /join or quit with /quit")
      reason -> IO.puts("Could not leave chatroom, reason: #{describe(reason)}")
    end
  end

  defp handle("/quit", server, nick) do
    call(server, {:disconnect, nick})
    System.halt(0)
  end

  defp handle("/users", server, nick), do: cast(server, {:list_users, nick})

  defp handle("/ping", server, _nick), do: IO.puts("ping: #{Node.ping(server)}")

  defp handle("/pm " <> rest, server, nick) do
    case String.split(rest, " ", parts: 2) do
      [to, text] -> cast(server, {:private_message, nick, to, text})
      _ -> IO.puts("Usage: /pm <to nick> <message>")
    end
  end

  defp handle("/cast " <> code, server, _nick), do: cast(server, eval(code))

  defp handle("/call " <> code, server, _nick),
    do: IO.puts("reply: #{inspect(call(server, eval(code)))}")

  defp handle("/send " <> code, server, _nick), do: send({:message_server, server}, eval(code))

  defp handle(text, server, nick), do: cast(server, {:say, nick, text})

  defp describe(reason) when is_atom(reason) or is_binary(reason), do: "#{reason}"
  defp describe(reason), do: inspect(reason)

  defp eval(code) do
    {term, _} = Code.eval_string(code)
    term
  end
end

ExmClient.main()
